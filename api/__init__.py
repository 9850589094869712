"""omnitune."""
