"""The driver side: CLI, Optuna space, Ray Tune assembly, schedulers, results, TensorBoard, export."""
