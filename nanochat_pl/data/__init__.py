"""The LightningDataModules: pretraining, chat and RL data, streamed, packed into batches and resumed exactly."""
