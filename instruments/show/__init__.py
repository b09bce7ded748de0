"""What shows: episode videos, figures, the TensorBoard sink and the HTML pages."""
