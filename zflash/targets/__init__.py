"""One back-end per download mode behind one interface (see ``base.Target``)."""
