"""Several processes (SPEC §13.4): the supervisor, its workers and the control channel between them."""
