"""The flow: committed alerts -> dispatcher -> admission -> executor -> verification."""
