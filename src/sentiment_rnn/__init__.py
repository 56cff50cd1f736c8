"""Reproduce, tune and compare recurrent sentiment classifiers on IMDB, with every run tracked."""

__version__ = "0.1.0"
