"""The serving domain; its services arrive with their issues."""
