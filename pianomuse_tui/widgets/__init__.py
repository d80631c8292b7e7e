"""Small reusable widgets of the app: loss plot, meters, piano roll, histograms."""
