"""Runnable examples (`python -m bisam_keras.examples.digits`)."""
