"""Where text comes from: downloaded shards, the offline corpus, the user's files, packaged evaluation data."""
