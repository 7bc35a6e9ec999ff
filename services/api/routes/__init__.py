"""One router per resource; each route only parses, authorises and calls the service layer."""
