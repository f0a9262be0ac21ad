"""What runs inside a job, whoever launched it. Each stage reads only its environment and the job directory."""
