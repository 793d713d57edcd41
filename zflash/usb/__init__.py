"""USB knowledge that is not a transport: the id table, udev rules, device listing, doctor."""
