"""What the six scripts share, one module per concern: cli, files, images, prompt, models, compat, training,
prediction, report and evaluation."""
