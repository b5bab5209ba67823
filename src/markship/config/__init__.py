"""The group configuration: the validated model, the file, the schedules."""
