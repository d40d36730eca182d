"""The monitoring domain; its services arrive with their issues."""
