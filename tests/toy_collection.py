"""A ten-document toy collection with four judged queries, shared by the reranking tests."""

from __future__ import annotations

DOCS = {
    "d0": "deploy a mysql database on cloud infrastructure",
    "d1": "install mysql on premises servers in your data center",
    "d2": "a virtual cloud network vcn is a private network in a region",
    "d3": "a virtual network interface card vnic attaches an instance to a subnet",
    "d4": "a web application firewall waf filters http traffic to web applications",
    "d5": "a firewall controls network traffic between hosts with security rules",
    "d6": "object storage buckets hold unstructured data",
    "d7": "block volumes attach to compute instances as disks",
    "d8": "load balancers distribute traffic across backend servers",
    "d9": "vaccines reduce the risk of infection in children",
}
QUERIES = {
    "q0": "deploy mysql in the cloud",
    "q1": "what is a vcn",
    "q2": "what does a waf filter",
    "q3": "attach a disk",
}
QRELS = {"q0": {"d0": 1}, "q1": {"d2": 1}, "q2": {"d4": 1}, "q3": {"d7": 1}}
