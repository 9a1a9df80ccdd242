"""Readers of the datasets `captioner prepare` builds from: each turns one release into items."""
