"""The job scheduler: claims jobs, runs each job's search loop, dispatches trials."""
