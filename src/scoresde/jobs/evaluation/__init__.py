"""Sample-quality and likelihood evaluation of trained models."""
