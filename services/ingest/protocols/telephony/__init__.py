"""Twilio, Exotel and Plivo media streams: their frames (``frames``) and the call core (``call``)."""
