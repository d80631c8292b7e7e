"""The three panes of the app, one module each."""
