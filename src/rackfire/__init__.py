"""rackfire: a fleet of virtual servers built from appliance roles, from one stack file."""

__version__ = "0.1.0"
