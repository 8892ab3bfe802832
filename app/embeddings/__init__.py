"""Embeddings: frozen-backbone features of a project's images, computed once by fanned-out jobs."""
