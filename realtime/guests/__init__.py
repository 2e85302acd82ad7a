"""Guest accounts: a pool of candidate users `guest1..N` for candidates who cannot log in."""
