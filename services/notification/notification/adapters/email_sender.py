"""Sends one e-mail over SMTP with aiosmtplib."""

import asyncio
import time
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from notification.adapters.webhook_sender import SendResult
from notification.config import NotificationSettings


async def send_email(settings: NotificationSettings, *, message_id: str, to: str, subject: str,
                     body: str) -> SendResult:
    """``status_code`` is the SMTP reply code when the server answered; None when it could not be reached."""
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # Stable across retries, so a mail client can drop a duplicate.
    message["Message-ID"] = f"<{message_id}@{settings.smtp_sender.rpartition('@')[2] or 'enlace'}>"
    message.set_content(body)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.smtp_timeout_s * 3):  # the whole dialogue, not each reply
            await aiosmtplib.send(
                message, hostname=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
                password=settings.smtp_password, start_tls=settings.smtp_starttls, timeout=settings.smtp_timeout_s)
        return SendResult(250, (time.perf_counter() - started) * 1000, None)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        code = exc.recipients[0].code if exc.recipients else None
        return SendResult(code, (time.perf_counter() - started) * 1000, f"SMTPRecipientsRefused: {code}")
    except aiosmtplib.SMTPResponseException as exc:
        error = f"{type(exc).__name__}: {exc.message}"[:500]
        return SendResult(exc.code, (time.perf_counter() - started) * 1000, error)
    except TimeoutError:
        return SendResult(None, (time.perf_counter() - started) * 1000, "TimeoutError: the SMTP dialogue took too long")
    except (aiosmtplib.SMTPException, OSError) as exc:
        return SendResult(None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"[:500])
