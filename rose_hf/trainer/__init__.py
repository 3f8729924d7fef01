"""The Trainer integration: the `RoseDataSelector` callback and `RoseTrainer`."""
