"""Scoring arithmetic: MaxSim and dot products, packed multi-vector corpora, exact top-k search."""
