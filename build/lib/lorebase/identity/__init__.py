"""Identity (seed: Identity & security): users, passwords, sessions, one-time tokens.
Storage and crypto only; the routes that use them are in lorebase/routes/."""
