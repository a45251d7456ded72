"""What runs inside a trial: data, models, losses, calibrators, metrics and the trial loop."""
