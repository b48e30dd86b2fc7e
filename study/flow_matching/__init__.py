"""Learning: the config, the training loop and what it is made of (batches, flows, models,
the optimizer step, validation, checkpoint policy, several processes), and sampling and
evaluation of trained runs. Files on disk are study.runs' business, data study.data's."""
