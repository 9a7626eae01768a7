from hn_trainer.data.beir import RetrievalData, document_text, load_beir, load_beir_folder, load_beir_hub
from hn_trainer.data.demo import demo_path
from hn_trainer.data.pairs import load_pairs
from hn_trainer.data.splits import split_queries

__all__ = ["RetrievalData", "demo_path", "document_text", "load_beir", "load_beir_folder", "load_beir_hub", "load_pairs",
           "split_queries"]
