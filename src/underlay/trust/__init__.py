"""The trust domain; its services arrive with their issues."""
