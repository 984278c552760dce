"""Messenger-side input: Send API body validation, webhook parsing and signatures."""
