from twisted.application.service import ServiceMaker

AtollonMail = ServiceMaker(
    "atollon-mail",
    "atollon_mail.tap",
    "All-in-one mail appliance: SMTP, submission, delivery queue and web admin",
    "atollon-mail",
)
