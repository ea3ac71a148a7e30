"""Text and data: tokenizers (char, byte, SentencePiece), text sources, named corpora, the token cache."""
