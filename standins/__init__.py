"""Real local stand-ins for the outside services we call, run on loopback by the tests and the
bench (not fakes of our own code, and not part of the image: production never imports them).

- `standins.twilio`: a Twilio-compatible Messages API (and Twilio's webhook signing).
"""
