"""The host agent: converges its host to what the controller asks, reports what it sees.
The only code that touches runtime/, net/ and images/."""
