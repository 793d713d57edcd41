"""The signed firmware package (.zpk): format, manifest, signing, sparse images."""
