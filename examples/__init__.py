"""User-side code that example recipes name by import path (``examples.digits:load``): data factories,
model factories and scripts, written the way a user of compress would write their own."""
