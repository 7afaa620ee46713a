"""The mcdropout HTTP service: every bundle in a model folder, served with MC dropout uncertainty."""
