"""Where trials run: in-process (the study loop) or in processes launched by the pool."""
