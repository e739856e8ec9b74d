"""Strict fakes of the few cloud API calls the cloud route backends make, written from each provider's
published API reference (no emulator exists for these clouds), and a stand-in metadata service.

A fake answers only the requests its backend is documented to send, in the documented shape, and rejects
everything else with the provider's own error shape, so a backend that drifts from the API fails here.
"""
