# Cross-model alignment and k-sweep (issue 3).
