"""What training and prediction both run on: checkpoint files, devices and numeric precision."""
