"""Analyses that answer design questions from routing data: is a cache worth it, where is the knee."""
