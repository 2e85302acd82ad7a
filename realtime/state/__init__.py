"""Session state: the pure state machine, the store protocol and its backends."""
