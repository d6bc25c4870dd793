"""Data: where text comes from (sources, download, offline corpus) and how it becomes batches."""
