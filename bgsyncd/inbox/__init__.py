"""Finding complete files in the inboxes and handing them to the store."""
