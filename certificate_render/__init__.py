"""The certificate renderer shared by the Lambda (lambdas/certificates/processor.py) and the bridge
(``moodle-offload certificates template set|show|preview``): template validation, text shaping,
the PDF writer, fonts, QR code and value formatting. Pure: no AWS client is created here (the
template store takes one), so the bridge can ship it without the Lambda code.
"""
