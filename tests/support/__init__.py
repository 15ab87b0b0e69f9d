"""What the tests share: helpers, fakes, and the real processes they start."""
