"""RQ job functions and agents. Run with the stock `rq worker` (see Procfile)."""
