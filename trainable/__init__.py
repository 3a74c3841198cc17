"""What one trial needs: data, models, the epoch loop, and the Ray Tune trainable."""
